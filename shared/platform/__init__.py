"""Platform pieces shared by every process: settings, logging, metrics, errors, breakers, rate limits, clients."""
