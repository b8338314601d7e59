"""Step 1: task classification (language filter, text features, classifier models and the stage)."""

