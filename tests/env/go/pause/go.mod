module allsource.local/testenv/pause

go 1.24.0
