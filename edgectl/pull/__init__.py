"""Pull mode: devices that call out. edgectl publishes to an OCI registry (publish), enrols devices (enroll);
agents poll and apply (edgectl_agent.pull). See docs/pull.md."""
