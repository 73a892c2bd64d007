"""specdecode package."""
