loadtest mesh --pairs 16 --rate 1000 --size 1280 --duration 10s --same-node-fraction 0.5 --url https://localhost:25593/derp,https://localhost:25594/derp --insecure
