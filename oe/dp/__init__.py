"""The parts of the compiled datapath (oe.datapath): see docs/architecture.md, section 4."""
