loadtest mesh --pairs 8 --max --window 64 --size 1280 --duration 10s --same-node-fraction 0 --url https://localhost:25611/derp,https://localhost:25612/derp --insecure
