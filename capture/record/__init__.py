"""What is captured: the one recorder that builds every kind of flow for the sessions that want it."""
