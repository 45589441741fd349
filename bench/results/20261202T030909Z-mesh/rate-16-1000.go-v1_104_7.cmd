loadtest mesh --pairs 16 --rate 1000 --size 1280 --duration 10s --same-node-fraction 0.5 --url https://localhost:25595/derp,https://localhost:25596/derp --insecure
