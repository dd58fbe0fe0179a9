"""The replica's life: leaving gracefully on SIGTERM (rolling deploys)."""
