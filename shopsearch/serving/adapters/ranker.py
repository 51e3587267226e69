from shopsearch.serving.backend import TritonStepModel


class TritonPythonModel(TritonStepModel):
    step_name = "ranker"
