"""A worker's and a replica's life: what a worker builds at start and closes at shutdown, leaving gracefully on
SIGTERM (rolling deploys)."""
