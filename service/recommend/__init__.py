"""Recommendations: a loaded model prepared for serving, the queries against it, and the one
service that joins the model, each worker's recent activity and the clock."""
