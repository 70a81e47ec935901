"""Class names: which class means 'no disease', and which is the positive class of a binary task."""


NORMAL_NAMES = {"normal", "negative", "no_finding", "no_findings", "healthy", "no_pneumonia", "no_covid", "none"}


def is_normal_class(name):
    "True for the class meaning 'no disease' (Normal, Negative, No_findings, 'Negative for Pneumonia', ...)."
    name = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    return name in NORMAL_NAMES or name.startswith("negative_for")


def positive_index(classes):
    "Binary tasks: the index of the disease class (the one that is not Normal/Negative), else the second."
    disease = [i for i, c in enumerate(classes) if not is_normal_class(c)]
    return disease[0] if len(classes) == 2 and len(disease) == 1 else 1
