loadtest mesh --pairs 8 --max --window 64 --size 1280 --duration 10s --same-node-fraction 1 --url https://localhost:38493/derp,https://localhost:38494/derp --insecure
