"""Ops' pages (the admin role): model versions, training runs, rollback, health."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/console", include_in_schema=False)
