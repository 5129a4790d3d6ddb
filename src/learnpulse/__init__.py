"""learnpulse: learning-analytics models over exam-prep question attempts."""

__version__ = "0.1.0"
