"""Marketing's pages: campaigns and their results, segments, loyalty metrics and cohorts."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/console", include_in_schema=False)
