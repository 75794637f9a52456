"""What both the gateway and the engines use: settings, the legacy wire models, redaction, the score formula."""
