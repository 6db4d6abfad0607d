"""The page pipeline: where project pages and the project list come from, and what of
them is visible.

Every stage is a :class:`~pipgate.pages.source.PageSource`: one upstream's pages
(:mod:`.upstream`), a router over several (:mod:`.router`), and filters that wrap a
source (:mod:`.deny`; policy, offline and metadata stages wrap the same way).
"""
