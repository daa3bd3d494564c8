"""Working: the RQ jobs, the adapter that queues them, locks, the thread-pool worker and retention."""
