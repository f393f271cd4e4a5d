"""In-memory fakes of the ports, held to the same contract suites as the real adapters."""
