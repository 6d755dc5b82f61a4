"""Developer tools: the test models the project builds (:mod:`.models`) and ``make bench`` (:mod:`.bench`)."""
