"""TIPSv2 training: the meta-architecture, schedules, optimiser, checkpoints and the loop."""
