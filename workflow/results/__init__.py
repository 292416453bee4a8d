"""What a sweep produced, for people to look at (SPEC §11): the fetched runs with their
metric series (``runs``), the HTML report (``report``) and the live watch (``watch``)."""
