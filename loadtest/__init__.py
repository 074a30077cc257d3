"""GSM8K replay client: drives a running thinkscale server and reports accuracy, cost and speed."""
