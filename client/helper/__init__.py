"""Browser-helper backend (native messaging host and opt-in localhost API)."""
