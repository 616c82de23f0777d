"""Charts and traces drawn from timelines, simulated or measured (matplotlib is imported lazily)."""
from .trace import perfetto_trace, write_trace

__all__ = ["perfetto_trace", "write_trace"]
