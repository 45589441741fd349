loadtest mesh --pairs 8 --max --window 64 --size 1280 --duration 10s --same-node-fraction 0 --url https://localhost:38501/derp,https://localhost:38502/derp --insecure
