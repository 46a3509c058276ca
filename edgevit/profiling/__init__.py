"""On-device latency profiling: the agent (edgevit/agent.py) run through a transport."""

from edgevit.profiling.run import ProfileResult, profile, transport_for
from edgevit.profiling.transport import LocalTransport, ProfileError, SshTransport

__all__ = ["LocalTransport", "ProfileError", "ProfileResult", "SshTransport", "profile", "transport_for"]
