"""Faults (issue 06, cases 1-5): crashes at every step, swaps under load, cut and corrupted uploads, full disks and
crash loops, against real agent processes with real llama.cpp and tiny GGUFs."""
