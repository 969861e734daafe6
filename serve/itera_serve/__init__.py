"""Itera on Ray Serve: a deployment serving itera-server's OpenAI-style API from replicas that each
hold an itera.Model and batch their requests continuously (docs/scale-out.md)."""
