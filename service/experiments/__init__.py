"""A/B tests of recommenders (issue 14, item 3): one experiment at a time serves a candidate
model version, or a candidate recipe of the current version, to a deterministic share of users;
results per arm, the sample-ratio check and the guard; promotion through the registry."""
