"""The engines as the gateway sees them: routing a job to an engine, sending legs, reconciling what runs."""
