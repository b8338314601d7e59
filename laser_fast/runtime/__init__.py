"""Runtime services every stage uses: the work directory, model loaders, devices, batching,
progress, memory and stage statistics."""

