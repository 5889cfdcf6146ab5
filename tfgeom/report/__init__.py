"""Reports: running analyses into `report.json`/`report.html` (`runner`), the
claims scorecard (`claims`) and display labels (`labels`)."""
