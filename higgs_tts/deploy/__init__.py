"""Deployment tools: network-volume setup and RunPod endpoint configuration."""
