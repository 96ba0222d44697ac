"""Pictures and numbers of ESamp runs: heatmaps, semantic spread, metrics, charts, reports.
Reads run traces from core; never loads a language model."""
