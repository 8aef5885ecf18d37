# Stage file; its rules are added by the bias stage.
