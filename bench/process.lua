-- wrk script for POST /v1/graphs/NAME/process (bench/server_load.py).
wrk.method = "POST"
wrk.body = '"hello plumber"'
wrk.headers["Content-Type"] = "application/json"
