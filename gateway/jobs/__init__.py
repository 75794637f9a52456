"""Jobs: the domain services behind the routes (submit, write-back, the task API) and leg follow-ups."""
