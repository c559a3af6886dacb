"""The Flower apps: the coordinator's ServerApp and the node's ClientApp."""
