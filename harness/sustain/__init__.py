"""Sustainability mode: replay a drifting data stream under re-fine-tuning policies (`python -m harness.sustain`)."""
