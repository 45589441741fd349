loadtest mesh --pairs 8 --max --window 64 --size 1280 --duration 10s --same-node-fraction 0.5 --url https://localhost:25601/derp,https://localhost:25602/derp --insecure
