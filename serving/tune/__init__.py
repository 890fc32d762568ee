"""quiver.serving.tune: measured serving settings for a model version's variants.

Public face: the search (`search`, its `Space`, `Trial` and `SearchResult`), `profile` and
`record`, which turn a search into a variant's `Profile` and write it into the store, and
`write_report`. `quiver tune` (quiver/tuning.py) drives them; the trials themselves run
through the real serving path (quiver/trials.py), which this package does not import.
"""

from .record import TuneError, check_writable, profile, record
from .report import write_report
from .search import Measure, Objective, SearchResult, Space, Trial, operating_point, search

__all__ = [
    "Measure",
    "Objective",
    "SearchResult",
    "Space",
    "Trial",
    "TuneError",
    "check_writable",
    "operating_point",
    "profile",
    "record",
    "search",
    "write_report",
]
