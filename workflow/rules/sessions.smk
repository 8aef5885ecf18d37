# Stage file; its rules are added by the sessions stage.
