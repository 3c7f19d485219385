"""The index: studies, series and instances as the archive knows them (where each lives, on which
tier, who read it) and the archive settings; the reads and writes every other package uses."""
