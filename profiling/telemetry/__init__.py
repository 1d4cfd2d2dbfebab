"""Telemetry: tracing, metrics and logs (imported by the service layer; imports neither ``service`` nor sizing)."""
