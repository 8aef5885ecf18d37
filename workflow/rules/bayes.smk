# Stage file; its rules are added by the bayes stage.
