"""Publishing events and managing the event-type catalog."""
