"""Natural-text task (issue 22): draft in progress -- windows cut from a tokenised corpus."""
