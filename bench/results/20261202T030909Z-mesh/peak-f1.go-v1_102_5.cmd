loadtest mesh --pairs 8 --max --window 64 --size 1280 --duration 10s --same-node-fraction 1 --url https://localhost:25605/derp,https://localhost:25606/derp --insecure
