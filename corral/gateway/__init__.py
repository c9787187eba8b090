"""The production gateway: a process of its own in front of replicas (shared/ARCHITECTURE.md). It never imports
torch or the engine; it speaks HTTP to replicas."""
