"""The two training stages and the step loop they share."""
